"""Adapter folders: their checks, `AdapterSet` (many adapters over one base), merging, chat prompt rendering."""
