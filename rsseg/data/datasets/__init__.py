"""One module (or package) per dataset: label convention, protocols, files, dataset and datamodule.

Prepared into patches first (``rsseg prepare``): ``potsdam``, ``vaihingen`` (sharing ``isprs/``) and
``uavid/``. Read as released: ``loveda``, ``refsegrs``, ``chn6cug``."""
