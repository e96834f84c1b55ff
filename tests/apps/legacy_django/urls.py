from django.urls import path

from . import views

urlpatterns = [
    path("", views.home),
    path("page/<str:name>/", views.page),
    path("echo/", views.echo),
    path("cookies/", views.cookies),
    path("download/", views.download),
    path("upload/", views.upload),
    path("die-mid-body/", views.die_mid_body),
    path("slow-head/", views.slow_head),
    path("gone/", views.gone),
]
