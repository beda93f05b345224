"""What every dataset shares: errors, spec, raster I/O, palettes, tiling, source walking, protocols,
preparation, transforms, the loader base datamodule and prepared roots. Import the modules themselves;
this package imports nothing, so light modules (``prepare``, ``tiling``) load without torch."""
