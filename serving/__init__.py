"""factflow.serving"""
