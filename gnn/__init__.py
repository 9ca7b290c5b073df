"""gnn: bipartite graph -> LightGCN embeddings (PyTorch Geometric) -> full-ranking evaluation.

    model     LightGCN on PyG's LGConv with the precomputed D^-1/2 A D^-1/2 as a sparse CSR (spmm path)
    sampling  vectorised negative sampling that never returns a user's positive
    losses    BPR (+ L2 on the batch's layer-0 embeddings) and sampled softmax
    train     Adam loop: early stopping on validation NDCG@20, checkpoints, fixed seed
    metrics   Recall/NDCG/Precision/HitRate@K, batched scores + top-k with training items masked
"""
