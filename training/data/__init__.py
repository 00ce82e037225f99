"""Training data: manifest datasets, multi-crop augmentation, iBOT masks, collation."""
