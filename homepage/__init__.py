"""homepage: model scores, the catalogue and recent behaviour -> one personalised page of sections per user.

    catalogue      item facts by catalogue position (category, stock, price band, trending, popularity) and
                   inductive vectors for items the model never saw (the train stage's content embedding, else
                   their category and price band's mean vector)
    signals        page-wide facts computed once: item neighbours, trending per category, new arrivals, each
                   user's purchases and top category; the model's candidates per block (`PageSignals.for_block`)
    candidates     the model's for_you candidates of any model rows, scored block by block
    sections       one function per section kind (a user's candidate sources) and the registry SECTION_KINDS
                   (which kinds skip the category cap, which may show purchases)
    merchandising  boosts and pins read from a file a merchandising team edits
    rows           PageBuilder: fills a row under the page rules, the category cap or MMR, boosts and pins, one
                   user at a time (the reference, and the path for pages with active merchandising rules)
    blocks         the same row filling as array operations over a block of users (windows, masks, MMR)
    block_pages    every section of a block of users' pages as candidate matrices, filled with `blocks`
    explain        each slot's explanation, a sentence backed by evidence (history, profile, trend, segment)
    tally          the stats summed block by block (rule check, counts, page-quality sums)
    rules          the page-rule check over every page after building
    quality        page-quality metrics next to a plain top-K baseline, and the for_you row's accuracy
    export         the page frame as one JSON object per user
    build          build_pages: frames and arrays in, the page rows block by block (in forked worker processes)
                   and their stats out
    config         HomepageConfig: sections, diversity, merchandising file, windows

The package reads frames and arrays only (no run directory, no command line): homerank.jobs.stage_homepage
is the thin stage around it.
"""
