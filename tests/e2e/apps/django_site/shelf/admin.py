from django.contrib import admin

from .models import Book, Page


@admin.register(Book)
class BookAdmin(admin.ModelAdmin):
    list_display = ["title", "author", "year"]
    search_fields = ["title", "author"]


admin.site.register(Page)
