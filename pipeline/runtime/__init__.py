"""Runtime adapters: Ray (connecting, starting a local cluster, its terminal noise) and
Dask (Dask-on-Ray as an analysis scheduler). Nothing here knows about training or the
engine; the workflows combine them."""
