"""Front desk: the HTTP client (imports nothing of ours) and the ``byol`` CLI façade (imports the rest lazily)."""
