"""A dataset's rows: read with Hugging Face ``datasets`` (``sources``), checked column by column (``columns``),
length-filtered against the engine (``prompt_budget``) and served as task samples (``rows``)."""
