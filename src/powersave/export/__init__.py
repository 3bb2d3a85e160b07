"""Export to other formats: NIR (needs the ``nir`` extra; imported only when used)."""

from powersave.export.nir import export_nir, from_nir, import_nir, to_nir

__all__ = ["export_nir", "from_nir", "import_nir", "to_nir"]
