"""factflow.memory"""
