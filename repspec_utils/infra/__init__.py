"""Infrastructure that knows nothing about the paper: atomic files, the registry, the cache, job executors, notebook parameters, the notebook API, provenance and the papermill runner."""
