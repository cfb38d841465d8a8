"""The live lab: network namespaces, the censor between them, and the services behind it."""
