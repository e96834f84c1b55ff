"""Views for the Django integration test project."""

import os

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt


def plain(request):
    return HttpResponse("hello from django", content_type="text/plain")


@csrf_exempt
def form(request):
    return JsonResponse({
        "method": request.method,
        "get": {key: request.GET.getlist(key) for key in request.GET},
        "post": {key: request.POST.getlist(key) for key in request.POST},
        "path": request.path,
    })


def json_view(request):
    return JsonResponse({"framework": "django", "pid": os.getpid(), "items": [1, 2, 3]})
