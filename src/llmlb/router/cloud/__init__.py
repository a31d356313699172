"""Requests to cloud providers (openai:, anthropic:, google:), and requests that need translating
(the Responses and Messages dialects).
"""
