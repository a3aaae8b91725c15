"""Storage adapters: the Zarr trajectory store, its chunk maps, layouts, run ids,
leases and damage checks. Paths and URLs become a store here, once."""
