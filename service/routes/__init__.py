"""The HTTP routes, a few lines each over the plain classes, and what they inject."""
