"""The benchmark harness: imgproxy side by side with the real Glance and nginx."""
