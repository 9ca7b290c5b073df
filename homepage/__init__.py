"""homepage: model scores, the catalogue and recent behaviour -> one personalised page of sections per user."""
