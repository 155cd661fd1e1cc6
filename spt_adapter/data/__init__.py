"""Images in and out, degradations, paired folders and the datasets that training and inference read."""
