"""cxrlib: the library behind the notebooks, one subpackage per pipeline stage (docs/development.md)."""
__version__ = "0.1.0"
