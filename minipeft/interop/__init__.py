"""Exchange with other libraries' file formats (HF peft's adapter folders), kept apart from the methods."""
