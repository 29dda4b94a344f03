"""The data model and the vocabulary of the package, importable without torch: `Case` and
`Prediction` (`case`), labels and terminology, options (`FusionRule`, `PostprocessStep`,
`Method`), the typed `Manifest` with its `WeightTable`, errors and `refuse_existing`,
progress/cancel, and the two versions."""
