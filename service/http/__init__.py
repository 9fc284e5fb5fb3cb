"""Transport helpers below the routes: bearer-token auth, request bodies read within limits, and the 500 middleware."""
