"""engine: behaviour logs -> clean interactions -> user-item bipartite graph.

The data journey inside this package, one module per step:

    ingest  (read Parquet/CSV through dask, validate, quarantine, drop duplicates)
      -> interactions  (weight events, time decay, aggregate to one edge per (user, item))
      -> kcore  (iterated k-core filter)
      -> encode  (contiguous user/item indices, mapping tables)
      -> split  (per-user temporal split: train / valid / test)
      -> graph  (bipartite adjacency, D^-1/2 A D^-1/2, PyG edge_index/edge_weight, statistics)

`backend` is the single CPU/GPU seam (frame library, torch device, local clusters, graph algorithms);
`matrices` builds CSR matrices from pairs and their D^-1/2 normalisation; `lightgcn_format` reads given splits;
`synthetic` is the embedded log generator; `config`, `schema` and `errors` are shared by every package.
"""
