"""Release: settings chosen on validation, shipping, the test report and the cost benchmark."""
