"""The Node object of a removed agent: deleted once its server is gone, with one clear word when it cannot be."""

from __future__ import annotations

import io
import urllib.error

import pytest

from components.kube_nodes import NodeNotRemoved, remove_node


class Api:
    def __init__(self, error=None):
        self.error, self.calls = error, []

    def call(self, method, path, body=None, *, text=False):
        self.calls.append((method, path))
        if self.error:
            raise self.error
        return {}


def http_error(code):
    return urllib.error.HTTPError("https://api/api/v1/nodes/x", code, "status", {}, io.BytesIO(b""))


def test_the_node_object_is_deleted():
    api = Api()
    assert remove_node(api, "vexxhost-k3s-3") is True
    assert api.calls == [("DELETE", "/api/v1/nodes/vexxhost-k3s-3")]


def test_a_node_that_is_already_gone_is_fine():
    assert remove_node(Api(http_error(404)), "vexxhost-k3s-3") is False


def test_an_api_that_does_not_answer_says_what_to_do():
    with pytest.raises(NodeNotRemoved, match=r"did not answer to delete node vexxhost-k3s-3 \(Connection refused\).*"
                                             r"kubectl delete node vexxhost-k3s-3"):
        remove_node(Api(urllib.error.URLError("Connection refused")), "vexxhost-k3s-3")
    with pytest.raises(NodeNotRemoved, match="refused to delete node vexxhost-k3s-3: HTTP 403"):
        remove_node(Api(http_error(403)), "vexxhost-k3s-3")
