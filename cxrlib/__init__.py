"""cxrlib: the library behind the notebooks. One module per concern; see README.md."""
__version__ = "0.1.0"
