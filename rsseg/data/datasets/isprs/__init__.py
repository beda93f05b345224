"""What Potsdam and Vaihingen share: ISPRS labels and bands (``labels``), preparation of the raw tiles
(``prepare``) and loading of a prepared root (``datamodule``)."""
