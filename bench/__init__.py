"""factflow.bench"""
