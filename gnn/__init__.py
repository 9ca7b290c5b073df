"""gnn: bipartite graph -> LightGCN embeddings (PyTorch Geometric) -> the final scorer -> full-ranking evaluation.

    model          LightGCN on PyG's LGConv with the precomputed D^-1/2 A D^-1/2 as a sparse CSR (spmm path)
    sampling       vectorised negative sampling that never returns a user's positive
    keys           (user, item) pairs as sorted keys and the membership test (sampling and hit counting)
    losses         BPR (+ L2 on the batch's layer-0 embeddings) and sampled softmax
    train          Adam loop: early stopping on a validation metric, checkpoints, resume, fixed seed
    linear_filter  GF-CF with BSPM sharpening, the closed-form filter blended with LightGCN
    svd            truncated SVD (ARPACK or randomized subspace iteration) for the filter
    scorer         the one final scorer: LightGCN +- GF-CF +- popularity prior, saved with its settings
    metrics        Recall/NDCG/Precision/HitRate@K, batched scores + top-k with known items masked
    memory         the memory guard run before training
"""
