"""``gfwlab report``: self-contained HTML reports with plots."""
