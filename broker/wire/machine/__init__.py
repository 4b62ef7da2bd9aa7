"""The protocol as machines, without I/O: the catalogue of every message
(`protocol`), and the broker's side of a session (`session`), which returns
actions (`actions`) for its driver to perform."""
