"""``gfwlab tools``: real circumvention tools through the lab, across the GFW's history."""
