"""Mr. DETR: Instructive Multi-Route Training for Detection Transformers (CVPR 2025) on detr_plus."""
