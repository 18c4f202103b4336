"""What users touch: the `c2gr` CLI, the papermill runner, notebook helpers, plots and widgets."""
