"""Reading finished runs back: report (charts + markdown), compare (runs side by side), the matplotlib panels."""
