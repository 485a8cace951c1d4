"""The model catalog: built-in and custom fields, models, content versions and their archive."""

from .archive import CatalogArchive
from .fields import BUILTIN_FIELDS, FieldSpec
from .model import CATALOG_SCHEMA, Catalog, CatalogModel

__all__ = ["BUILTIN_FIELDS", "CATALOG_SCHEMA", "Catalog", "CatalogArchive", "CatalogModel", "FieldSpec"]
