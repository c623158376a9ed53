"""Command-line entry points (thin: compose the config, call one function)."""
