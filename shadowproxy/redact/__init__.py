"""Secrets out of everything stored or logged: keyed masks, field and header redaction."""
