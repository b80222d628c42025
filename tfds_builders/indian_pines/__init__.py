"""AVIRIS Indian Pines (200 bands), the demo's column split."""
