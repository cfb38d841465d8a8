"""The inline adapter: the engine on NFQUEUE in the lab's censor namespace."""
