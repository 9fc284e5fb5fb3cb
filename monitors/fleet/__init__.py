"""The fleet monitor (``vai-sidecar monitor``): drift and labelled windows of each model, computed once for
every sidecar replica, by whichever monitor process holds the model's lease in Redis."""
