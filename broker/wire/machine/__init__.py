"""The protocol as machines, without I/O: the catalogue of every message
(`protocol`), a connection before its session (`lobby`), and the broker's
side of a session (`session`, with `participants`, `consent`, `reasons`),
which returns actions (`actions`) for its driver to perform."""
