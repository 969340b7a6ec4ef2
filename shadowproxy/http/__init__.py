"""HTTP/1.1 on the wire: the grammar, the parsers, the upstream client pool and the server."""
