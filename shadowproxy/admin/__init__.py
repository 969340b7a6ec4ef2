"""The admin server: health, the JSON API, Prometheus metrics and the UI."""
