from django.urls import path

from . import views

urlpatterns = [
    path("", views.plain),
    path("form/", views.form),
    path("json/", views.json_view),
]
