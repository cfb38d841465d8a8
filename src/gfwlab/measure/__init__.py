"""The measurer's side: ``gfwlab probe`` and ``gfwlab grade``, test lists, OONI measurements."""
