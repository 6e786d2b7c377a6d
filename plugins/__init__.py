"""Built-in management plugins, installed as the package `xaiproxy_plugins`."""
