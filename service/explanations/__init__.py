"""Reading stored explanations and layer reports for the routes: public shapes, heatmaps, feature maps. No HTTP here."""
