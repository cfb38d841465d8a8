"""Client-side evasion strategies: real clients that change what the censor sees."""
