def test_it_requires_login(client, db):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_shows_the_connected_services(client, viewer, neo4j_driver, vectors, settings):
    client.force_login(viewer)
    response = client.get("/")
    page = response.content.decode()
    assert response.status_code == 200
    assert settings.NEO4J_URI in page
    assert "Neo4j 5.26" in page
    assert "LanceDB" in page
    assert page.count("answers") == 2


def test_the_login_page_logs_in(client, viewer):
    response = client.post("/accounts/login/", {"username": viewer.username, "password": "correct horse battery staple"})
    assert response.status_code == 302
